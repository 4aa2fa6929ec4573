"""Options shared by subcommands."""

from __future__ import annotations

import argparse
import json


def parse_value(text: str):
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"target parameter {item!r} must look like KEY=VALUE")
        params[key.replace("-", "_")] = parse_value(value)
    return params


def format_summary(s: dict) -> str:
    lines = [
        f"  samples      {s['n']}",
        f"  ELBO         {s['elbo']:.4f} ± {s['elbo_se']:.4f}",
        f"  IS log Z     {s['log_z']:.4f} ± {s['log_z_se']:.4f}",
    ]
    if "log_evidence" in s:
        lines.append(f"  exact log Z  {s['log_evidence']:.4f}   (error {s['log_z_error']:+.4f})")
    lines += [
        f"  ESS / n      {s['ess']:.4f}",
        f"  Pareto k     {s['pareto_k']:.3f}"
        + ("   (reliable: k < 0.7)" if s["pareto_k"] < 0.7 else "   (unreliable: k >= 0.7)"),
    ]
    return "\n".join(lines)


def add_device_options(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)")


def _number(kind, test, words):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({kind.__name__})") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    parse.__name__ = f"{words} {kind.__name__}"
    return parse


# argparse types: a bad value is a one-line usage error (exit code 2) before anything runs
positive_int = _number(int, lambda v: v > 0, "positive")
nonnegative_int = _number(int, lambda v: v >= 0, "non-negative")
positive_float = _number(float, lambda v: v > 0 and v < float("inf"), "positive and finite")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "non-negative and finite")
