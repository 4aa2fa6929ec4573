"""Real data sets shipped inside the package (see README.md in this folder for sources and licences)."""

from __future__ import annotations

import bz2
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

COLON_ENV = "FLOWVI_COLON_DATA"


@dataclass
class ArrayData:
    """An array of examples; ``levels`` is the number of pixel values of images, None for real vectors.
    ``test_index``: a fixed held-out split (e.g. by source image), used instead of a random one;
    ``groups``: the source of each example, where known."""

    name: str
    x: np.ndarray
    levels: int | None = None
    test_index: np.ndarray | None = None
    groups: np.ndarray | None = None

    @property
    def is_image(self) -> bool:
        return self.levels is not None


def load_nci60() -> tuple[np.ndarray, np.ndarray]:
    """NCI-60 microarray data: ``X`` (64, 6830) float32 expression values and ``labels`` (64,) cancer types.

    Ross et al. (2000), Nature Genetics 24:227-235, as shipped by the Python package ISLP (BSD licence;
    identical to the ``NCI60`` data set of the R package ISLR).
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


def load_colon(path=None) -> tuple[np.ndarray, np.ndarray, str]:
    """Alon et al. (1999) colon cancer microarray data from a local file: ``X`` (62, 2000), ``y`` (62,) with
    1 = tumour (40) and 0 = normal (22), and the file's format, ``"raw"`` or ``"libsvm"``.

    flowvi does not ship these data (see README.md in this folder). ``path`` (default: the environment
    variable ``FLOWVI_COLON_DATA``) is either

    * the CSV of Bioconductor's ``colonCA`` expression values as written by the R package datamicroarray
      (``alon-colon/colon-cancer.csv``: a header row, then per tissue ``"t"``/``"n"`` and 2000 raw intensities);
      format ``"raw"``; or
    * LIBSVM's ``colon-cancer`` file (optionally ``.bz2``), the copy Andrade (2024) used: per tissue a label
      -1 (tumour) or +1 (normal) and ``index:value`` pairs, already standardised by LIBSVM; format ``"libsvm"``.
    """
    path = path or os.environ.get(COLON_ENV)
    if not path:
        raise FileNotFoundError(
            "the colon cancer data are not shipped with flowvi: pass path=FILE (datamicroarray's colon-cancer.csv "
            f"or LIBSVM's colon-cancer[.bz2]) or set {COLON_ENV}; see docs/high_dimensional.md"
        )
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"colon cancer data: no file {path}")
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
        lines = [line.strip() for line in f if line.strip()]
    if lines[0].startswith('"labels"') or lines[0].startswith("labels"):
        rows = [line.split(",") for line in lines[1:]]
        labels = [r[0].strip('"') for r in rows]
        if set(labels) != {"t", "n"}:
            raise ValueError(f"{path}: expected labels 't'/'n' in the first column, got {sorted(set(labels))}")
        X = np.array([[float(v) for v in r[1:]] for r in rows])
        y = np.array([lab == "t" for lab in labels], dtype=np.float64)
        kind = "raw"
    else:
        rows = [line.split() for line in lines]
        y_pm = np.array([float(r[0]) for r in rows])
        if not set(y_pm.tolist()) <= {-1.0, 1.0}:
            raise ValueError(f"{path}: expected LIBSVM labels -1/+1, got {sorted(set(y_pm.tolist()))}")
        entries = [[(int(k) - 1, float(v)) for k, v in (t.split(":") for t in r[1:])] for r in rows]
        X = np.zeros((len(rows), 1 + max(k for e in entries for k, _ in e)))
        for i, e in enumerate(entries):
            for k, v in e:
                X[i, k] = v
        y = (y_pm == -1).astype(np.float64)
        kind = "libsvm"
    if X.shape != (62, 2000) or int(y.sum()) != 40:
        raise ValueError(
            f"{path}: expected Alon et al.'s 62 tissues x 2000 genes with 40 tumours; got {X.shape}, {int(y.sum())} tumours"
        )
    if not np.isfinite(X).all():
        raise ValueError(f"{path}: the expression values contain NaN or inf")
    return X, y, kind


__all__ = ["COLON_ENV", "load_breast_cancer", "load_colon", "load_digits", "load_nci60", "load_wine"]
