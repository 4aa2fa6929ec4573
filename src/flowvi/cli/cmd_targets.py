"""``flowvi targets``: the built-in targets and their parameters."""

from __future__ import annotations

from flowvi.targets import TARGETS, target_parameters


def register(sub):
    p = sub.add_parser(
        "targets",
        help="list built-in targets and their parameters",
        description="The built-in targets and their parameters with their defaults (give them as -p KEY=VALUE).",
    )
    p.set_defaults(func=run)


#: what a parameter left at None means, for the parameters whose default is computed from the others
COMPUTED = {
    "dim": "p+1",
    "n_nonzero": "min(5,p)",
    "tau_scale": "p0/(p-p0)*pseudo_sd/sqrt(n)",
    "path": "$FLOWVI_COLON_DATA",
    "preset": "none",
}


def describe_parameters(name: str) -> str:
    """``k=v, ...`` with the value each parameter takes when not given."""
    params = target_parameters(name)
    return ", ".join(f"{k}={COMPUTED.get(k, 'None') if v is None else v}" for k, v in params.items())


def run(args):
    width = max(len(n) for n in TARGETS)
    for name in sorted(TARGETS):
        params = describe_parameters(name)
        print(f"{name:<{width}}  {TARGETS[name][1]}\n{'':<{width}}  parameters: {params or 'none'}")
    print("\nA user target: flowvi fit path/to/file.py:function --dim D (function maps (batch, D) to (batch,))")
    return 0
