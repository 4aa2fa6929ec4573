"""Natural-image patches cut at load time from the photographs shipped in scikit-image and scikit-learn.

Nothing is shipped with flowvi: the colour photographs inside the installed packages (``skimage.data`` and
``sklearn.datasets.load_sample_images``, provenance and licences in ``flowvi/data/README.md``) are cut into
``size x size x 3`` patches at seeded random positions. The held-out split is by *source image*: every patch of
a test photograph is in the test set and none of a training photograph is, so test patches share no pixel with
training patches. Nearly constant patches (max - min < 4 levels over the patch, e.g. the black border of the
retina photograph) are dropped. Pixels are 8-bit (256 levels), modelled after uniform dequantization.
"""

from __future__ import annotations

import numpy as np

from flowvi.data import ArrayData

#: source name -> (package, loader); a source may hold several photographs of one scene (kept on one side)
SOURCES = {
    "astronaut": ("skimage", "astronaut"),
    "rocket": ("skimage", "rocket"),
    "hubble_deep_field": ("skimage", "hubble_deep_field"),
    "immunohistochemistry": ("skimage", "immunohistochemistry"),
    "retina": ("skimage", "retina"),
    "motorcycle": ("skimage", "stereo_motorcycle"),  # the left and right views of one scene
    "china": ("sklearn", "china.jpg"),
    "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "flower": ("sklearn", "flower.jpg"),
}
TEST_SOURCES = ("chelsea", "coffee", "flower")
PATCHES_PER_AREA = 4.0  # patches per size x size of photograph area (before dropping near-constant ones)
MIN_RANGE = 4


def photographs(source: str) -> list[np.ndarray]:
    """The ``(H, W, 3)`` uint8 photographs of one source, read from the installed package."""
    package, name = SOURCES[source]
    try:
        import skimage.data
        import sklearn.datasets
    except ImportError as e:  # a ValueError so that the command line reports it in one line
        raise ValueError(
            f"the patch data sets cut photographs shipped in scikit-image and scikit-learn ({e.name} is missing): "
            "pip install 'flowvi[images]'"
        ) from None
    if package == "skimage":
        images = getattr(skimage.data, name)()
        return [images[0], images[1]] if name == "stereo_motorcycle" else [images]
    sample = sklearn.datasets.load_sample_images()
    return [next(im for im, f in zip(sample.images, sample.filenames, strict=True) if f.endswith(name))]


def cut(image: np.ndarray, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` patches ``(n, 3, size, size)`` at uniform random positions, near-constant ones dropped."""
    h, w, _ = image.shape
    rows = rng.integers(0, h - size + 1, n)
    cols = rng.integers(0, w - size + 1, n)
    patches = np.stack([image[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])
    spread = patches.reshape(n, -1).max(1).astype(int) - patches.reshape(n, -1).min(1)
    return patches[spread >= MIN_RANGE].transpose(0, 3, 1, 2)


def patches(size: int, seed: int = 0) -> ArrayData:
    """The patch data set: ``(N, 3, size, size)`` uint8, training sources first, then the test sources
    (``ArrayData.test_index`` marks the latter). Reproducible: the same ``size`` and ``seed`` give the same array.
    """
    blocks, test_mask, source_of = [], [], []
    for i, source in enumerate(SOURCES):
        rng = np.random.default_rng([seed, size, i])
        for image in photographs(source):
            n = round(PATCHES_PER_AREA * image.shape[0] * image.shape[1] / size**2)
            block = cut(np.ascontiguousarray(image[..., :3]), size, n, rng)
            blocks.append(block)
            test_mask.append(np.full(len(block), source in TEST_SOURCES))
            source_of.append(np.full(len(block), i, dtype=np.int16))
    x = np.concatenate(blocks)
    test = np.concatenate(test_mask)
    return ArrayData(f"patches{size}", x, levels=256, test_index=np.flatnonzero(test), groups=np.concatenate(source_of))


def histogram_bits_per_dim(train: np.ndarray, test: np.ndarray, levels: int, alpha: float = 1.0) -> float:
    """Test bits/dim of independent per-pixel categorical models fitted on ``train`` (one per position and
    channel, add-``alpha`` smoothing): p_d(k) = (n_d(k) + alpha) / (N + levels alpha),
    bits/dim = -mean_{i,d} log2 p_d(test_{i,d})."""
    tr = train.reshape(len(train), -1).astype(np.int64)
    te = test.reshape(len(test), -1).astype(np.int64)
    dims = tr.shape[1]
    counts = np.bincount((np.arange(dims) * levels + tr).ravel(), minlength=dims * levels).reshape(dims, levels)
    log_p = np.log2(counts + alpha) - np.log2(len(tr) + levels * alpha)
    return float(-log_p[np.arange(dims), te].mean())
