"""benchmarks/step.py: its CPU mode runs and checks the fast paths' agreement; the profiler's kernel classes."""

import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("step")


def test_kernel_category(bench):
    cases = {
        "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32": "matmul",
        "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_32x5_nt_align4>": "matmul",
        "triton_tem_fused_addmm_t_7": "matmul",
        "void cublasLt::splitKreduce_kernel<32, 16, int, float>": "matmul",
        "void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, FusedAdamMathFunctor>": "adam",
        "triton_poi_fused_addmm_relu_0": "elementwise",
        "triton_red_fused_sum_4": "elementwise",
        "void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>": "elementwise",
        "Memcpy DtoD (Device -> Device)": "other",
    }
    for name, kind in cases.items():
        assert bench.kernel_category(name) == kind, name


def test_quick_run_without_peers(bench, tmp_path):
    """flowvi alone (--peers ""), the plain step and the eager fused step: same losses, same gradient."""
    out = tmp_path / "step.json"
    args = ["--quick", "--device", "cpu", "--estimators", "reparam", "--peers", "", "--variants", "plain,eager-fused"]
    bench.main([*args, "--configs", "0", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    fused = rows[0]["results"]["flowvi/reparam/eager-fused"]
    assert fused["ms"] > 0 and fused["grad_rel"] < 1e-5 and fused["loss_err_per_dim"] < 1e-6
    with pytest.raises(SystemExit, match="unknown peer"):
        bench.main([*args, "--peers", "nflows"])


def test_floor_quick_run(tmp_path):
    """benchmarks/step_floor.py on the CPU: the step's matrix products and Adam update, timed alone."""
    floor = load_benchmark("step_floor")
    out = tmp_path / "floor.json"
    rows = floor.main(["--quick", "--device", "cpu", "--configs", "0", "--out", str(out)])["rows"]
    assert json.loads(out.read_text())["rows"] == rows
    (row,) = rows
    assert row["params"] == 2 * ((5 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10))
    assert row["fwd_ms"] > 0 and row["bwd_ms"] > 0 and row["adam_ms"] > 0
    assert row["floor_ms"] == row["fwd_ms"] + row["bwd_ms"] + row["adam_ms"]


def test_ddp_variant_names():
    ddp = load_benchmark("ddp")
    assert ddp.parse_variant("fast") == ("fast", 1)
    assert ddp.parse_variant("fast-overlap@4") == ("fast-overlap", 4)
    assert ddp.base_variant("fast-overlap-bf16comm@4") == "fast-overlap@4"
    assert ddp.base_variant("fast-bf16comm") == "fast"
    for bad in ("fast@4", "fast-overlap@0", "fast-overlap@x", "slow"):  # @K only for overlap variants
        with pytest.raises(ValueError):
            ddp.parse_variant(bad)
