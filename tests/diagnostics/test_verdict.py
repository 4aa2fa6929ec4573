"""The verdict (issue 20): one function decides, from k-hat and ESS after a fit, from R-hat and ESS after refine;
PSIS resampling picks draws by their smoothed weights."""

import math

import numpy as np

from flowvi.diagnostics.resample import systematic_resample
from flowvi.diagnostics.verdict import fit_verdict, format_verdict, refine_verdict


def test_fit_verdict():
    good = fit_verdict({"pareto_k": 0.41, "ess": 0.5, "n": 10_000}, "converged: ...")
    assert good == {"trustworthy": True, "reason": "PSIS k-hat 0.41, 5000 effective draws", "action": None}
    assert format_verdict(good) == "trustworthy: PSIS k-hat 0.41, 5000 effective draws"
    bad = fit_verdict({"pareto_k": 1.2, "ess": 0.001, "n": 100_000}, "reached 2000 steps; the ELBO was still rising")
    assert not bad["trustworthy"] and "k-hat 1.20" in bad["reason"] and "ELBO still rising" in bad["reason"]
    assert "flowvi refine" in bad["action"] and "train longer" in bad["action"]
    assert format_verdict(bad).startswith("not trustworthy: k-hat 1.20")
    few = fit_verdict({"pareto_k": 0.3, "ess": 0.01, "n": 10_000})  # k fine but 100 effective draws
    assert not few["trustworthy"] and "100 effective draws < 400" in few["reason"]
    assert not fit_verdict({"pareto_k": math.nan, "ess": 0.0, "n": 100})["trustworthy"]


def test_refine_verdict():
    ok = refine_verdict("neutra", 1.004, 2210, 1630)
    assert ok["trustworthy"] and format_verdict(ok, refined=True).startswith("refined: NeuTra-HMC, R-hat 1.004 <= 1.01")
    assert not refine_verdict("neutra", 1.02, 2210, 1630)["trustworthy"]
    assert not refine_verdict("imh", 1.001, 300, 1630)["trustworthy"]
    assert "3 divergent" in refine_verdict("neutra", 1.001, 900, 900, divergences=3)["reason"]


def test_systematic_resampling_follows_the_weights():
    log_w = np.log(np.array([0.1, 0.0, 0.6, 0.3]) + 1e-300)
    idx = systematic_resample(log_w, 10_000, np.random.default_rng(0))
    counts = np.bincount(idx, minlength=4) / 10_000
    assert np.allclose(counts, [0.1, 0.0, 0.6, 0.3], atol=1e-3)
