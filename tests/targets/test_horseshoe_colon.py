"""The colon cancer horseshoe target: both accepted file formats, the paper's preprocessing against an
independent computation, the log density against scipy, the dimension and the label counts."""

import bz2
import os

import numpy as np
import pytest
import torch
from scipy import stats

from flowvi.data import COLON_ENV, load_colon
from flowvi.targets import make_target


def scipy_log_density(theta, X, y):
    """log p(theta) from the constrained parameters with scipy (tau ~ HalfCauchy(1), beta0 ~ Cauchy(0, 10)),
    plus the log-Jacobians of lambda = exp(.) and tau = exp(.)."""
    p = X.shape[1]
    z, log_lam, log_tau, b0 = theta[:p], theta[p : 2 * p], theta[2 * p], theta[2 * p + 1]
    lam, tau = np.exp(log_lam), np.exp(log_tau)
    prior = (
        stats.norm.logpdf(z).sum()
        + (stats.halfcauchy.logpdf(lam) + log_lam).sum()
        + stats.halfcauchy.logpdf(tau)
        + log_tau
        + stats.cauchy.logpdf(b0, scale=10.0)
    )
    eta = X @ (tau * lam * z) + b0
    return prior + np.sum(-y * np.logaddexp(0.0, -eta) - (1 - y) * np.logaddexp(0.0, eta))


def fake_raw_colon(seed=0):
    """Positive 'intensities' with gene- and tissue-specific levels, 40 tumours and 22 normals (shuffled)."""
    rng = np.random.default_rng(seed)
    X = np.exp(rng.normal(6, 1, size=(1, 2000)) + rng.normal(0, 0.3, size=(62, 1)) + rng.normal(0, 0.5, (62, 2000)))
    labels = rng.permutation(["t"] * 40 + ["n"] * 22)
    return X.round(2), labels


def write_raw_csv(path, X, labels):
    with open(path, "w") as f:
        f.write(",".join(['"labels"'] + [f'"X{j + 1}"' for j in range(X.shape[1])]) + "\n")
        for lab, row in zip(labels, X, strict=True):
            f.write(",".join([f'"{lab}"'] + [repr(float(v)) for v in row]) + "\n")


def write_libsvm(path, X, labels):
    with bz2.open(path, "wt") as f:
        for lab, row in zip(labels, X, strict=True):
            f.write(
                ("-1" if lab == "t" else "1") + " " + " ".join(f"{j + 1}:{v:.12g}" for j, v in enumerate(row)) + "\n"
            )


def libsvm_file_values(X_raw):
    """LIBSVM's colon-cancer values: rows standardised (population sd), then columns (sample sd), with scipy."""
    return stats.zscore(stats.zscore(X_raw, axis=1), axis=0, ddof=1)


def independent_preprocessing(X_raw):
    """LIBSVM's values, then scikit-learn's RobustScaler (median, interquartile range) written out with scipy."""
    cols = libsvm_file_values(X_raw)
    return (cols - np.median(cols, axis=0)) / stats.iqr(cols, axis=0)


@pytest.fixture(scope="module")
def colon_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("colon")
    X, labels = fake_raw_colon()
    write_raw_csv(d / "colon-cancer.csv", X, labels)
    write_libsvm(d / "colon-cancer.bz2", libsvm_file_values(X), labels)
    return d, X, labels


def test_both_formats_give_the_papers_design_matrix(colon_files):
    d, X_raw, labels = colon_files
    want = independent_preprocessing(X_raw)
    t_raw = make_target("horseshoe_colon", path=str(d / "colon-cancer.csv")).double()
    t_svm = make_target("horseshoe_colon", path=str(d / "colon-cancer.bz2")).double()
    assert t_raw.dim == t_svm.dim == 2 * 2000 + 2 == 4002
    np.testing.assert_allclose(t_raw.X.numpy(), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(t_svm.X.numpy(), want, rtol=1e-8, atol=1e-8)  # 12 significant digits in the file
    np.testing.assert_array_equal(t_raw.y.numpy(), (labels == "t").astype(float))
    np.testing.assert_array_equal(t_svm.y.numpy(), t_raw.y.numpy())
    assert int(t_raw.y.sum()) == 40 and int((1 - t_raw.y).sum()) == 22


def test_log_prob_matches_scipy(colon_files):
    d, _, _ = colon_files
    t = make_target("horseshoe_colon", path=str(d / "colon-cancer.csv")).double()
    theta = 0.3 * torch.randn(3, t.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = [scipy_log_density(th, t.X.numpy(), t.y.numpy()) for th in theta.numpy()]
    np.testing.assert_allclose(t.log_prob(theta).numpy(), want, rtol=1e-10)


def test_missing_or_wrong_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(COLON_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="not shipped"):
        load_colon()
    with pytest.raises(FileNotFoundError, match="no file"):
        load_colon(tmp_path / "nope.csv")
    X, labels = fake_raw_colon()
    write_raw_csv(tmp_path / "short.csv", X[:50], labels[:50])
    with pytest.raises(ValueError, match="62 tissues x 2000 genes"):
        load_colon(tmp_path / "short.csv")


@pytest.mark.skipif(not os.environ.get(COLON_ENV), reason=f"set {COLON_ENV} to the colon cancer data file")
def test_real_colon_data():
    X, y, kind = load_colon()
    assert X.shape == (62, 2000) and int(y.sum()) == 40 and int((1 - y).sum()) == 22
    t = make_target("horseshoe_colon").double()
    assert t.dim == 4002
    np.testing.assert_allclose(np.median(t.X.numpy(), axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(stats.iqr(t.X.numpy(), axis=0), 1, atol=1e-12)
