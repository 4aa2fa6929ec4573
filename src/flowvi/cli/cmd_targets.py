"""``flowvi targets``: the built-in targets and their parameters."""

from __future__ import annotations

from ..targets import TARGETS, target_parameters


def register(sub):
    p = sub.add_parser("targets", help="list built-in targets and their parameters")
    p.set_defaults(func=run)


def run(args):
    width = max(len(n) for n in TARGETS)
    for name in sorted(TARGETS):
        params = ", ".join(f"{k}={v}" for k, v in target_parameters(name).items())
        print(f"{name:<{width}}  {TARGETS[name][1]}\n{'':<{width}}  parameters: {params or 'none'}")
    print("\nA user target: flowvi fit path/to/file.py:function --dim D (function maps (batch, D) to (batch,))")
    return 0
