"""The command line: a small fit, evaluate and sample round trip, and one-line errors for bad input."""

import json

import numpy as np
import pytest

from flowvi.cli import main

SMALL = [
    "--steps",
    "40",
    "--batch-size",
    "32",
    "--layers",
    "2",
    "--hidden",
    "16",
    "--eval-samples",
    "2000",
    "--n-samples",
    "100",
    "--quiet",
]


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fit_evaluate_sample_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = run(["fit", "conjugate_regression", "--dim", "4", "--out", str(out), *SMALL], capsys)
    assert rc == 0, stdout
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "samples.npy",
        "training_curve.png",
        "flow.pt",
        "checkpoint.pt",
    ):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {"elbo", "elbo_se", "log_z", "log_z_se", "ess", "pareto_k", "log_evidence"} <= set(summary)
    assert np.load(out / "samples.npy").shape == (100, 4)

    rc, stdout, _ = run(["evaluate", str(out), "-n", "1000"], capsys)
    assert rc == 0 and "IS log Z" in stdout and "exact log Z" in stdout
    rc, stdout, _ = run(["sample", str(out), "-n", "7"], capsys)
    assert rc == 0 and np.load(out / "samples-7.npy").shape == (7, 4)

    # an existing run is not overwritten by accident; resume with other options is refused
    rc, _, err = run(["fit", "conjugate_regression", "--dim", "4", "--out", str(out), *SMALL], capsys)
    assert rc == 2 and "already holds a run" in err
    rc, _, err = run(
        [
            "fit",
            "conjugate_regression",
            "--dim",
            "4",
            "--out",
            str(out),
            "--resume",
            *SMALL[:-1],
            "--lr",
            "0.1",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 2 and "differ" in err and "train" in err


def test_user_target_file(tmp_path, capsys):
    f = tmp_path / "model.py"
    f.write_text("import torch\n\ndef log_p(x):\n    return -0.5 * (x ** 2).sum(-1)\n")
    rc, stdout, err = run(["fit", f"{f}:log_p", "--dim", "3", "--out", str(tmp_path / "r"), *SMALL], capsys)
    assert rc == 0, err
    assert "IS log Z" in stdout


BAD_TARGETS = {
    "shape": ("def f(x):\n    return x\n", "returned shape (8, 3)"),
    "nan": ("import torch\ndef f(x):\n    return torch.full((x.shape[0],), float('nan'))\n", "returned nan"),
    "dtype": ("import torch\ndef f(x):\n    return torch.zeros(x.shape[0], dtype=torch.long)\n", "dtype torch.int64"),
    "not_tensor": ("def f(x):\n    return 0.0\n", "must return a torch.Tensor"),
    "import_error": ("import not_a_module\ndef f(x):\n    return x\n", "could not import"),
}


@pytest.mark.parametrize("kind", list(BAD_TARGETS))
def test_bad_user_targets_give_one_line_errors(tmp_path, capsys, kind):
    source, message = BAD_TARGETS[kind]
    f = tmp_path / f"{kind}.py"
    f.write_text(source)
    rc, _, err = run(["fit", f"{f}:f", "--dim", "3", "--out", str(tmp_path / kind), *SMALL], capsys)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "nope"], "unknown target 'nope'"),
        (["fit", "funnel", "--clamp", "hard"], "unknown clamp 'hard'"),
        (["fit", "funnel", "--estimator", "magic"], "unknown estimator 'magic'"),
        (["fit", "funnel", "--base", "cauchy"], "unknown base 'cauchy'"),
        (["fit", "funnel", "-p", "sigma"], "must look like KEY=VALUE"),
        (["fit", "funnel", "-p", "bogus=1"], "has no parameter bogus"),
        (["fit", "missing.py:f", "--dim", "2"], "does not exist"),
        (["fit", "funnel", "--steps", "0"], "--steps must be positive"),
        (["fit", "funnel", "--device", "cuda:7"], "cuda"),
        (["evaluate", "/nonexistent/run"], "not a flowvi run directory"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, capsys, argv, message):
    rc, _, err = run([*argv, "--out", str(tmp_path / "x")] if argv[0] == "fit" else argv, capsys)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "funnel", "--frobnicate"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --frobnicate" in err and len(err.strip().splitlines()) == 1


def test_targets_lists_parameters(capsys):
    rc, stdout, _ = run(["targets"], capsys)
    assert rc == 0 and "funnel" in stdout and "conjugate_regression" in stdout and "sigma=3.0" in stdout


@pytest.mark.parametrize(
    "argv", [["fit", "u1", "--lattice", "4"], ["fit", "funnel", "--dim", "6", "--hierarchical", "off"]]
)
def test_fit_without_size_options_uses_the_flows_own_defaults(argv):
    """`--layers/--hidden/--depth` left out: Real NVP gets 8 x 256 x 2, a lattice target its field flow's own
    defaults (a 256-channel convolution would make `flowvi fit u1` take hours on a CPU)."""
    from flowvi.cli import build_parser
    from flowvi.cli.cmd_fit import config_from_args
    from flowvi.flows.realnvp import realnvp
    from flowvi.runs.run_dir import build

    config = config_from_args(build_parser().parse_args(argv))
    assert not {"layers", "hidden", "depth"} & set(config["flow"])
    flow, target = build(config)
    n = sum(p.numel() for p in flow.parameters())
    if not hasattr(target, "default_flow"):
        assert n == sum(p.numel() for p in realnvp(6, layers=8, hidden=256, depth=2).parameters())
    else:
        assert n == sum(p.numel() for p in target.default_flow().parameters())
        big = build({**config, "flow": {**config["flow"], "hidden": 256}})[0]
        assert n < sum(p.numel() for p in big.parameters()) / 100
