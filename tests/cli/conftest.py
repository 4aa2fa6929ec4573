from tests.runs.conftest import trained_run  # noqa: F401  (a small finished fit, shared with tests/runs)
