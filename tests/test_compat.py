"""The flat module paths of flowvi 0.1 keep working for one release, with a DeprecationWarning."""

import importlib
import sys

import pytest

import flowvi
from flowvi._compat import MOVED


@pytest.fixture(autouse=True)
def _restore_flowvi_attributes():
    """Importing an old path sets ``flowvi.<name>`` to its alias module: put the package's own names back."""
    saved = dict(vars(flowvi))
    yield
    for name in set(vars(flowvi)) - set(saved):
        delattr(flowvi, name)
    for name, value in saved.items():
        setattr(flowvi, name, value)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_forwards(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        alias = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    public = [name for name in dir(new) if not name.startswith("_")]
    assert public, MOVED[old]
    for name in public:
        assert getattr(alias, name) is getattr(new, name)


def test_old_paths_do_not_shadow_the_public_functions():
    sys.modules.pop("flowvi.evaluate", None)
    with pytest.warns(DeprecationWarning):
        from flowvi.evaluate import evaluate  # noqa: F401
    assert callable(flowvi.evaluate) and flowvi.evaluate is not None
    sys.modules.pop("flowvi.realnvp", None)
    with pytest.warns(DeprecationWarning):
        importlib.import_module("flowvi.realnvp")
    flow = flowvi.realnvp(3, layers=2, hidden=4)
    assert flow.dim == 3


def test_package_has_few_top_level_modules():
    from pathlib import Path

    top = [p.name for p in Path(flowvi.__file__).parent.glob("*.py")]
    assert len(top) <= 8, top


def test_names_that_moved_to_their_package_still_resolve_at_the_old_path():
    from flowvi._compat import PACKAGE_NAMES

    for old, (package, names) in PACKAGE_NAMES.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning):
            alias = importlib.import_module(old)
        for name in names:
            assert getattr(alias, name) is getattr(importlib.import_module(package), name)
