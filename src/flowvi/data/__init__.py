"""Real data sets shipped inside the package (see README.md in this folder for sources and licences)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_nci60() -> tuple[np.ndarray, np.ndarray]:
    """NCI-60 microarray data: ``X`` (64, 6830) float32 expression values and ``labels`` (64,) cancer types.

    Ross et al. (2000), Nature Genetics 24:227-235, as packaged in the R package ISLR (data set ``NCI60``).
    """
    with resources.files(__name__).joinpath("nci60.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["X"], data["labels"]


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """UCI Breast Cancer Wisconsin (Diagnostic): ``X`` (569, 30) features and ``y`` (569,) with 0 = malignant,
    1 = benign (scikit-learn's coding). Wolberg, Street & Mangasarian (1995), CC BY 4.0."""
    with resources.files(__name__).joinpath("breast_cancer.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["X"], data["y"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """UCI optdigits 8 x 8 (scikit-learn's ``load_digits``): ``images`` (1797, 8, 8) uint8 with values 0..16
    and ``labels`` (1797,). Alpaydin & Kaynak (1998), CC BY 4.0."""
    with resources.files(__name__).joinpath("digits.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["images"], data["labels"]


def load_wine() -> tuple[np.ndarray, np.ndarray]:
    """UCI Wine recognition (scikit-learn's ``load_wine``): ``X`` (178, 13) float64 and ``y`` (178,) cultivar.
    Forina et al. (1991), CC BY 4.0."""
    with resources.files(__name__).joinpath("wine.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["X"], data["y"]


__all__ = ["load_breast_cancer", "load_digits", "load_nci60", "load_wine"]
