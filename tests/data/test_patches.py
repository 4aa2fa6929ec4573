"""The natural-image patch sets: split by source photograph, reproducible, 8-bit pixels; the histogram baseline."""

import math

import numpy as np
import pytest

from flowvi.data.arrays import load_data
from flowvi.data.patches import SOURCES, TEST_SOURCES, cut, histogram_bits_per_dim, patches, photographs
from flowvi.training.density import split


@pytest.fixture(scope="module")
def p32():
    return load_data("patches32")


def test_patches_are_8bit_images_of_the_right_shape(p32):
    assert p32.x.dtype == np.uint8 and p32.x.ndim == 4 and p32.x.shape[1:] == (3, 32, 32)
    assert p32.levels == 256 and p32.is_image
    assert p32.x.min() >= 0 and p32.x.max() <= 255 and p32.x.max() > 200
    assert len(p32.x) > 10_000  # tens of thousands of 32x32 patches would need more photographs; ~20k here
    # near-constant patches (e.g. the retina photograph's black border) are dropped
    flat = p32.x.reshape(len(p32.x), -1)
    assert (flat.max(1).astype(int) - flat.min(1) >= 4).all()


def test_split_is_disjoint_by_source_photograph(p32):
    train, test = split(p32, test_fraction=0.5, seed=123)  # the fraction and seed are ignored: the split is fixed
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(p32.x)
    names = np.array(list(SOURCES))
    assert set(names[p32.groups[test]]) == set(TEST_SOURCES)
    assert not set(names[p32.groups[train]]) & set(TEST_SOURCES)
    # every test patch comes from a test photograph: it occurs in one of them and in no training photograph
    patch = p32.x[test[0]].transpose(1, 2, 0)
    where = [s for s in SOURCES for im in photographs(s) if _contains(im[..., :3], patch)]
    assert where and set(where) <= set(TEST_SOURCES)


def _contains(image, patch) -> bool:
    h, w = patch.shape[:2]
    corners = np.argwhere((image[: image.shape[0] - h + 1, : image.shape[1] - w + 1] == patch[0, 0]).all(-1))
    return any(np.array_equal(image[r : r + h, c : c + w], patch) for r, c in corners)


def test_cut_is_reproducible_and_cuts_real_windows():
    image = photographs("chelsea")[0]
    a = cut(image, 16, 50, np.random.default_rng(5))
    b = cut(image, 16, 50, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.shape[1:] == (3, 16, 16)
    assert not np.array_equal(a, cut(image, 16, 50, np.random.default_rng(6)))
    assert _contains(image, a[0].transpose(1, 2, 0))


def test_patch_set_is_reproducible(p32):
    again = patches(32)
    assert np.array_equal(again.x, p32.x) and np.array_equal(again.test_index, p32.test_index)
    p16 = load_data("patches16")
    assert p16.x.shape[1:] == (3, 16, 16) and p16.x.dtype == np.uint8 and len(p16.x) > 50_000


def test_histogram_baseline_bits_per_dim():
    # one pixel, 4 levels; train counts 0:3, 1:1; add-one: p = (4, 2, 1, 1) / 8
    train = np.array([0, 0, 0, 1])[:, None]
    test = np.array([0, 1, 3])[:, None]
    expected = -(math.log2(4 / 8) + math.log2(2 / 8) + math.log2(1 / 8)) / 3
    assert histogram_bits_per_dim(train, test, levels=4) == pytest.approx(expected, abs=1e-12)
    # uniform data: the baseline tends to log2(levels) bits/dim
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(20000, 3))
    assert histogram_bits_per_dim(x[:10000], x[10000:], 16) == pytest.approx(4.0, abs=0.01)


def test_missing_packages_give_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # import fails as if scikit-image were not installed
    with pytest.raises(ValueError, match=r"pip install 'flowvi\[images\]'"):
        photographs("astronaut")
