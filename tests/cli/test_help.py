"""The command line tells the truth about itself: every default in --help, the README's option table of
``flowvi fit`` equal to the parser's options, deprecated names that still work and warn, real target defaults."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from flowvi.cli import HelpFormatter, build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_default_is_in_help():
    """Each option that takes a value and has a default shows it in its own help line."""
    missing = []
    for name, parser in subparsers().items():
        formatter = HelpFormatter(prog=parser.prog)
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
                continue
            if "default" not in formatter._format_action(action):
                missing.append(f"{name} {action.option_strings[-1]}")
    assert not missing, f"options whose --help hides the default: {missing}"


def test_help_prints_a_default_value(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "(default: 2000)" in " ".join(out.split()) or "default: 2000" in out
    assert "default: 0.001" in out


def fit_table_options() -> set[str]:
    """The long options named in the first column of README's "Options of `flowvi fit`" table."""
    text = README.read_text()
    section = text.split("### Options of `flowvi fit`", 1)[1]
    rows = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    assert len(rows) > 10, "the README's option table of flowvi fit is missing"
    names = set()
    for row in rows[2:]:
        first = row.split("|")[1]
        names |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-p)\b", first))
    return names


def parser_options(parser) -> set[str]:
    names = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        long = [o for o in action.option_strings if o.startswith("--")]
        names |= set(long or action.option_strings)
    return names


def test_readme_fit_table_matches_the_parser():
    """Read at run time: an option added to `flowvi fit` without a README row (or a row for an option that
    is gone) fails here."""
    parser = subparsers()["fit"]
    table, options = fit_table_options(), parser_options(parser)
    options = {o for o in options if o != "--param"} | {"-p"}
    assert not options - table, f"options of flowvi fit missing from the README table: {sorted(options - table)}"
    assert not table - options, f"README table rows that are not options of flowvi fit: {sorted(table - options)}"


def test_fit_data_schedule_is_renamed_and_the_old_name_warns(capsys):
    parser = build_parser()
    new = parser.parse_args(["fit-data", "digits", "--parts-schedule", "alternate"])
    assert new.schedule == "alternate" and capsys.readouterr().err == ""
    old = parser.parse_args(["fit-data", "digits", "--schedule", "sequential"])
    assert old.schedule == "sequential"
    assert "--schedule is deprecated, use --parts-schedule" in capsys.readouterr().err
    assert parser.parse_args(["fit-data", "digits"]).schedule == "end_to_end"


def test_targets_show_real_defaults(capsys):
    from flowvi.targets import make_target, target_parameters

    params = target_parameters("phi4")
    target = make_target("phi4")
    assert (params["L"], params["kappa"], params["lam"]) == (target.L, target.kappa, target.lam) == (8, 0.3, 0.022)
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "L=None" not in out and "L=8, kappa=0.3, lam=0.022" in out
    assert "dim=p+1" in out
