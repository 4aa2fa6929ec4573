import pytest

from flowvi.cli import main
from tests.runs.cli_helpers import fit_argv


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One small finished 'flowvi fit' run (20 steps, checkpoints at 10 and 20); copy it before changing it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main([str(a) for a in fit_argv(out)]) == 0
    return out
