"""A target that raises is one line naming the exception and where flowvi called it; the NaN hint names only
options that are off."""

import pytest
import torch

from flowvi.flows.realnvp import realnvp
from flowvi.targets import CallableTarget
from flowvi.training.loop import TrainingDiverged, fit
from tests.runs.cli_helpers import assert_one_line_error, cli, fit_argv

RAISING = """
calls = [0]

def f(x):
    calls[0] += 1
    if {condition}:
        raise ZeroDivisionError("boom at call %d" % calls[0])
    return -0.5 * (x ** 2).sum(-1)
"""


@pytest.mark.parametrize(
    "condition, where",
    [
        ("True", "first check"),
        ("calls[0] >= 5", "training step"),
        ("x.shape[0] > 100", "evaluation"),
    ],
)
def test_target_exception_is_one_line(tmp_path, capsys, condition, where):
    file = tmp_path / "t.py"
    file.write_text(RAISING.format(condition=condition))
    rc, _, err = cli(fit_argv(tmp_path / "run", target=(f"{file}:f", "--dim", "2")), capsys)
    line = assert_one_line_error(rc, err, "ZeroDivisionError", "boom at call", where)
    if where == "training step":
        assert "training step 3" in line  # calls 1 and 2: the checks before the run directory and in fit()


def test_checkpoint_every_zero(tmp_path, capsys):
    rc, _, err = cli(fit_argv(tmp_path / "run", "--checkpoint-every", "0"), capsys)
    assert_one_line_error(rc, err, "--checkpoint-every")


def _nan_gradient(x):
    # finite value, NaN gradient: the untaken branch of where() has a NaN derivative
    return -0.5 * (x**2).sum(-1) + torch.where(x > 1e6, torch.sqrt(-x), torch.zeros_like(x)).sum(-1)


@pytest.mark.parametrize("options, named", [({}, []), ({"clamp": "none", "loft": False}, ["--clamp", "--loft"])])
def test_nan_hint_names_only_options_that_are_off(options, named):
    torch.manual_seed(0)
    flow = realnvp(2, layers=2, hidden=8, **options)
    with pytest.raises(TrainingDiverged) as info:
        fit(flow, CallableTarget(_nan_gradient, 2), steps=30, batch_size=8, progress=False)
    message = str(info.value)
    for option in ("--clamp", "--loft"):
        assert (option in message) == (option in named), message
    assert "--lr" in message
