"""benchmarks/authors.py --quick: the comparison with the authors' code runs and records what it claims."""

import json
import math

from tests.conftest import load_benchmark
from tests.physics.test_authors_physics import NEUMC  # noqa: F401  (fails clearly when neumc is missing)


def test_authors_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWVI_UPG", raising=False)
    monkeypatch.delenv("FLOWVI_ANDRADE", raising=False)
    bench = load_benchmark("authors")
    results = bench.main(["--quick", "--out", str(tmp_path), "--scratch", str(tmp_path / "scratch")])
    lattice = json.loads((tmp_path / "authors_lattice_quick.json").read_text())
    assert lattice["command"].startswith("benchmarks/authors.py --quick")
    rows = lattice["rows"]
    assert [(r["side"], r["estimator"]) for r in rows] == bench.RUNS_LATTICE
    for r in rows:
        assert "error" not in r, r
        assert r["step_s"] > 0 and r["steps"] == 3 and 0 < r["curve"][-1]["ess"] <= 1
    # the same flow on both sides: neumc's conditioners read two constant input channels more
    ours = next(r["params"] for r in rows if r["side"] == "flowvi")
    theirs = next(r["params"] for r in rows if r["side"] == "neumc")
    assert theirs - ours == 2 * (2 * 4 * 9)  # layers x (2 channels x 4 hidden x 3 x 3)
    assert "schwinger" in lattice["summary"] and lattice["summary"]["schwinger"]["step_ratio_best"] > 0
    # without the other authors' checkouts those parts say so
    assert "unified-path-gradients" in results["path"]["skipped"]
    assert "andrade" in results["realnvp"]["skipped"]
    ablation = results["ablation"]
    assert {r["variant"] for r in ablation["rows"]} == {"standard", "stabilized"}
    for r in ablation["rows"]:
        assert r["side"] == "flowvi" and math.isfinite(r["curve"][-1]["elbo"]), r
    assert ablation["summary"]["flowvi standard"]["runs"] == 1
    assert not bench.diverged(ablation["rows"][0]) and bench.diverged({**ablation["rows"][0], "status": "stopped"})
    last = ablation["rows"][0]["curve"][-1]
    collapsed = [{**last, "elbo": -10.0}, {**last, "elbo": -10.0 - 2 * bench.COLLAPSE_NATS}]
    assert bench.diverged({**ablation["rows"][0], "curve": collapsed})
    # the evidence part: every flow and SMC on horseshoe_nci60, timed in process CPU seconds
    evidence = results["evidence"]
    assert [r["variant"] for r in evidence["rows"]] == [*bench.EVIDENCE_FLOWS, "smc"]
    for r in evidence["rows"]:
        assert "error" not in r and r.get("status", "ok") == "ok" and math.isfinite(r["log_z"]), r
        assert r["train_cpu_s"] > 0
    assert set(evidence["summary"]) == {"smc_log_z_mean", *bench.EVIDENCE_FLOWS}


def test_clock_times_the_authors_loop_and_stops_it():
    """``Clock`` replaces ``tqdm`` in Andrade's training loop: it evaluates every ``eval_every`` iterations and
    ends the loop once the training time (evaluations excluded) passes the budget."""
    import time

    bench = load_benchmark("authors")
    evaluations = []
    clock = bench.Clock(lambda: evaluations.append(1) or {"elbo": 0.0}, eval_every=2, budget_s=0.05)
    done = []
    for it in clock(range(1000)):
        time.sleep(0.01)
        done.append(it)
    assert len(clock.times) == len(done) < 1000
    assert clock.train_s - clock.times[-1] < 0.05 <= clock.train_s  # stopped right after passing the budget
    assert len(evaluations) == len(done) // 2 and [c["steps"] for c in clock.curve] == list(range(2, len(done) + 1, 2))
    assert abs(clock.train_s - sum(clock.times)) < 1e-9
