"""benchmarks/parts.py --quick: every schedule runs, the table's times and ratios, the profile and memory."""

import json

from tests.conftest import load_benchmark


def test_quick_run(tmp_path):
    bench = load_benchmark("parts")
    out = tmp_path / "parts.json"
    result = bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["target_test_bpd"] == result["target_test_bpd"]
    runs = {r["name"]: r for r in result["runs"]}
    assert set(runs) == {"end_to_end", "alternate_then_finetune", "alternate", "parallel"}
    e2e = runs["end_to_end"]
    assert e2e["final_test_bpd"] < e2e["curve"][0]["test_bpd"]  # it trains
    assert e2e["ratio_to_end_to_end"] == 1.0 and e2e["step_kinds"] == {"end_to_end": 40}
    atf = runs["alternate_then_finetune"]
    assert set(atf["step_kinds"]) <= {"part 0", "part 1", "end_to_end"}
    for r in runs.values():  # the by-parts runs stop at the target or at their step budget
        assert r["time_to_target"] is not None or r["steps_run"] == 60
    prof = result["profile"]
    assert "frozen prefix (no grad)" in prof["part 1"]["phases_ms"]
    assert "backward part 0" not in prof["part 1"]["phases_ms"]
    assert prof["part 1 (prefix cache)"]["cache_hit_rate"] > 0.9
    mem = result["memory"]
    # a step for part 1 holds no gradient or activations of part 0, an end-to-end step holds both parts'
    assert mem["alternate part 1"]["parts"][0]["saved"] == 0 and not mem["alternate part 1"]["parts"][0]["trained"]
    assert mem["alternate part 1"]["per_device"]["cpu"] < mem["end_to_end"]["per_device"]["cpu"]
    assert result["part_devices"].startswith("not run")
